export { bitsUpload, bitsUpload as default } from './middleware';
export type { BitsUploadMiddleware, CloseOptions } from './middleware';
export type { BitsUploadOptions } from './options';
export type {
  BitsUploadEvents,
  BitsUploadHooks,
  CompletedUpload,
  FailureInfo,
  ProgressInfo,
  Refusal,
  SessionInfo,
  SessionRequest,
} from './events';
export type { ReplyBody, ReplyHandler, ReplyResult, ReplyUpload, ReplyUrlOptions } from './reply/types';
export { httpNotification, HttpNotificationError } from './reply/http-notification';
export type { HttpNotificationFailure, HttpNotificationOptions } from './reply/http-notification';
export { BitsError } from './errors';
export type { BitsErrorCode, BitsErrorOptions, WireError } from './errors';
export { BITS_PROTOCOL_GUID, HRESULT } from './protocol/constants';
export type { PacketType } from './protocol/constants';
export * from './storage';
export { acceptBitsPost, acceptsBitsPost, bitsPostStats, MARKER_OVERHEAD } from './server/accept-bits-post';
export type { AcceptBitsPostOptions, BitsPostStats } from './server/accept-bits-post';
export type { PassthroughReason } from './server/framing-tracker';
export type { TrustedProxyOptions } from './server/trusted-proxy';
export { isBitsPost } from './server/method-marker';
export { createBitsServer } from './server/create-server';
export type { CreateBitsServerOptions } from './server/create-server';
