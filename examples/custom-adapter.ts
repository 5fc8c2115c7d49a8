// A custom storage adapter: every completed upload is also recorded in an audit log, and uploads
// go to a per-tenant folder. Implements the StorageAdapter contract by delegating the bytes to
// FileSystemStorage. Prove a real adapter correct with runStorageAdapterConformance() in jest.
import { appendFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import express from 'express';
import {
  acceptBitsPost,
  bitsUpload,
  FileSystemStorage,
  type CommitOptions,
  type Destination,
  type DestinationKind,
  type NewSession,
  type RecoveryReport,
  type SessionChanges,
  type SessionRecord,
  type StorageAdapter,
} from 'bits-upload';

class AuditedStorage implements StorageAdapter {
  private readonly files: FileSystemStorage;

  constructor(directory: string, private readonly auditLog: string) {
    this.files = new FileSystemStorage({ directory });
  }

  createSession(session: NewSession): Promise<SessionRecord> {
    return this.files.createSession(session);
  }

  getSession(id: string): Promise<SessionRecord | undefined> {
    return this.files.getSession(id);
  }

  updateSession(id: string, changes: SessionChanges): Promise<SessionRecord> {
    return this.files.updateSession(id, changes);
  }

  writeFragment(id: string, offset: number, body: Readable): Promise<number> {
    return this.files.writeFragment(id, offset, body);
  }

  inspectDestination(destination: Destination): Promise<DestinationKind> {
    return this.files.inspectDestination(destination);
  }

  async commit(id: string, options: CommitOptions): Promise<void> {
    await this.files.commit(id, options);
    const record = await this.files.getSession(id);
    if (record !== undefined) {
      const line = `${new Date().toISOString()} ${record.principal ?? '-'} ${record.destination.join('/')} ${record.receivedLength}\n`;
      await appendFile(this.auditLog, line);
    }
  }

  endSession(id: string, state: 'closed' | 'cancelled', now: number): Promise<void> {
    return this.files.endSession(id, state, now);
  }

  deleteSession(id: string): Promise<void> {
    return this.files.deleteSession(id);
  }

  listSessions(): AsyncIterable<SessionRecord> {
    return this.files.listSessions();
  }

  readData(id: string, start: number): Promise<Readable> {
    return this.files.readData(id, start);
  }

  writeReply(id: string, body: Readable): Promise<number> {
    return this.files.writeReply(id, body);
  }

  readReply(id: string, start: number, end: number): Promise<Readable> {
    return this.files.readReply(id, start, end);
  }

  localDataFile(id: string): Promise<string> {
    return this.files.localDataFile(id);
  }

  recover(): Promise<RecoveryReport> {
    return this.files.recover();
  }
}

const app = express();
app.use('/uploads', bitsUpload({ storage: new AuditedStorage('./uploads', './uploads-audit.log') }));
acceptBitsPost(app.listen(8080));
