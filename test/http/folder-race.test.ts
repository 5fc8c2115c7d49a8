/**
 * A deterministic version of the folder race in concurrency.test.ts: while one upload commits into
 * a folder that does not exist yet, another upload creates that folder (FileSystemStorage commits
 * run `mkdir -p`). The race is injected by making `realpath()` of the new folder fail and the folder
 * appear before the storage looks again, exactly as a concurrent commit does. A folder that exists
 * is not a dangling link; the upload must succeed (bits-protocol.md §5.5), not end with
 * 400 + E_INVALIDARG on its final fragment (a fatal error for the job, §9.1).
 */
import type * as FsPromises from 'node:fs/promises';
import path from 'node:path';
import express from 'express';
import { bitsUpload } from '../../lib/middleware';
import { BITS_PROTOCOL, BitsClient } from '../helpers/bits-client';
import { expectAck, listUploads, makeSandbox, serve, type RunningServer, type Sandbox } from './support';

jest.mock('node:fs/promises', () => {
  const actual = jest.requireActual<typeof FsPromises>('node:fs/promises');
  return { ...actual, realpath: jest.fn(actual.realpath) };
});

const fsp = jest.requireMock<typeof FsPromises & { realpath: jest.Mock }>('node:fs/promises');
const actualFs = jest.requireActual<typeof FsPromises>('node:fs/promises');

let sandbox: Sandbox;
let running: RunningServer | undefined;
let client: BitsClient | undefined;

beforeEach(async () => {
  sandbox = await makeSandbox();
  const app = express();
  app.use('/uploads', bitsUpload({ directory: sandbox.root }));
  running = await serve(app);
  client = new BitsClient(running.port);
});

afterEach(async () => {
  fsp.realpath.mockImplementation(actualFs.realpath);
  client?.dispose();
  await running?.close();
  await sandbox.remove();
});

/** realpath() of `folder` fails with ENOENT once, and the folder appears right after (another commit's mkdir). */
function folderAppearsDuringCheck(folder: string): () => number {
  let injected = 0;
  fsp.realpath.mockImplementation(async (target: Parameters<typeof actualFs.realpath>[0]) => {
    try {
      return await actualFs.realpath(target);
    } catch (error) {
      if (injected === 0 && String(target) === folder && (error as NodeJS.ErrnoException).code === 'ENOENT') {
        injected += 1;
        await actualFs.mkdir(folder, { recursive: true });
      }
      throw error;
    }
  });
  return () => injected;
}

test('a folder created by another upload during the commit check: the upload is committed', async () => {
  if (client === undefined) throw new Error('no client');
  const target = '/uploads/new-folder/file.bin';
  const sid = await client.openSession(target);
  const injected = folderAppearsDuringCheck(path.join(sandbox.root, 'new-folder'));
  const response = await client.fragment(target, sid, 0, 3, 4, Buffer.from('abcd'));
  expect(injected()).toBe(1);
  expectAck(response, 200, { 'BITS-Session-Id': sid, 'BITS-Received-Content-Range': '4' });
  expect(await listUploads(sandbox.root)).toEqual(['new-folder/', 'new-folder/file.bin 4']);
});

test('a folder created by another upload during the Create-Session check: the session is created', async () => {
  if (client === undefined) throw new Error('no client');
  const injected = folderAppearsDuringCheck(path.join(sandbox.root, 'other-folder'));
  const response = await client.createSession('/uploads/other-folder/file.bin');
  expect(injected()).toBe(1);
  const sid = response.headers['bits-session-id'] ?? '';
  expectAck(response, 200, { 'BITS-Protocol': BITS_PROTOCOL, 'BITS-Session-Id': sid, 'Accept-Encoding': 'identity' });
});
