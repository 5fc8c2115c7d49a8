export { acceptBitsPost, acceptsBitsPost, bitsPostStats, MARKER_OVERHEAD } from './server/accept-bits-post';
export type { AcceptBitsPostOptions, BitsPostStats } from './server/accept-bits-post';
export type { PassthroughReason } from './server/framing-tracker';
export type { TrustedProxyOptions } from './server/trusted-proxy';
export { isBitsPost } from './server/method-marker';
export { createBitsServer } from './server/create-server';
export type { CreateBitsServerOptions } from './server/create-server';
