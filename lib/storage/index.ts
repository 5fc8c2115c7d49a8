export {
  DestinationExistsError,
  DestinationIsDirectoryError,
  InvalidDestinationError,
  newSessionRecord,
  SessionNotFoundError,
} from './adapter';
export type {
  CommitOptions,
  Destination,
  DestinationKind,
  NewSession,
  RecoveryReport,
  SessionChanges,
  SessionRecord,
  SessionState,
  StorageAdapter,
  StoredReply,
} from './adapter';
export { FileSystemStorage } from './filesystem';
export type { FileSystemStorageOptions, FsyncPolicy } from './filesystem';
export { MemoryStorage } from './memory';
export type { MemoryStorageOptions } from './memory';
export { runStorageAdapterConformance } from './conformance';
export type { StorageAdapterHarness } from './conformance';
