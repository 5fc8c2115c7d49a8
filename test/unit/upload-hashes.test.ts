/** Running SHA-256 per upload (bits-protocol.md §6.4): tee, checkpoint, catch-up from the storage. */
import { createHash } from 'node:crypto';
import { UploadHashes } from '../../lib/lifecycle/upload-hashes';
import { StubStorage } from '../helpers/stub-storage';

const hex = (text: string): string => createHash('sha256').update(text).digest('hex');
const SID = '{3F2504E0-4F89-41D3-9A0C-0305E82C3301}';

/** A storage holding `data` as the stored bytes of session SID. */
function storageWith(data: string): StubStorage {
  const storage = new StubStorage();
  storage.seed(
    {
      id: SID,
      destination: ['x'],
      urlPath: '/x',
      principal: undefined,
      protocol: '{7df0354d-249b-430f-820d-3d2a9bef4931}',
      totalLength: 10,
      receivedLength: data.length,
      state: 'receiving',
      createdAt: 0,
      updatedAt: 0,
      sha256: undefined,
      delivered: false,
      reply: undefined,
    },
    Buffer.from(data),
  );
  return storage;
}

test('bytes fed and made durable move the state on; the digest leaves it usable', async () => {
  const hashes = new UploadHashes(storageWith(''));
  const first = await hashes.tee(SID, 0);
  first.hash.update('0123');
  first.settle(4, 4);
  expect(await hashes.digest(SID, 4)).toBe(hex('0123'));
  const second = await hashes.tee(SID, 4);
  second.hash.update('4567');
  second.settle(4, 8);
  expect(await hashes.digest(SID, 8)).toBe(hex('01234567'));
  expect(hashes.size).toBe(1);
});

test('fewer durable bytes than fed, or a failed write: the state stays at the checkpoint', async () => {
  const storage = storageWith('0123');
  const hashes = new UploadHashes(storage);
  const tee = await hashes.tee(SID, 0);
  tee.hash.update('0123');
  tee.settle(4, 2);
  const failed = await hashes.tee(SID, 0);
  failed.hash.update('01');
  failed.settle(2, undefined);
  expect(await hashes.digest(SID, 4)).toBe(hex('0123'));
  expect(storage.callsOf('readData').map((call) => call.args)).toEqual([[SID, 0]]);
});

test('bytes pushed into the tee after it settled are not counted', async () => {
  const hashes = new UploadHashes(storageWith(''));
  const tee = await hashes.tee(SID, 0);
  tee.hash.update('ab');
  tee.settle(2, 2);
  tee.hash.update('late');
  expect(await hashes.digest(SID, 2)).toBe(hex('ab'));
});

test('a missing state is caught up by reading the stored bytes once', async () => {
  const storage = storageWith('012345');
  const hashes = new UploadHashes(storage);
  const tee = await hashes.tee(SID, 6);
  tee.hash.update('6789');
  tee.settle(4, 10);
  expect(await hashes.digest(SID, 10)).toBe(hex('0123456789'));
  expect(storage.callsOf('readData')).toHaveLength(1);
});

test('a storage that returns the wrong number of bytes fails the catch-up, and the state is dropped', async () => {
  const storage = storageWith('0123');
  const hashes = new UploadHashes(storage);
  await expect(hashes.digest(SID, 6)).rejects.toThrow('Storage returned 4 bytes of session');
  expect(hashes.size).toBe(0);
});

test('a state ahead of the offset (a repaired record) starts over', async () => {
  const storage = storageWith('01');
  const hashes = new UploadHashes(storage);
  const tee = await hashes.tee(SID, 0);
  tee.hash.update('0123');
  tee.settle(4, 4);
  expect(await hashes.digest(SID, 2)).toBe(hex('01'));
});

test('forget and clear drop states', async () => {
  const hashes = new UploadHashes(storageWith(''));
  await hashes.tee(SID, 0);
  hashes.forget(SID);
  expect(hashes.size).toBe(0);
  await hashes.tee(SID, 0);
  hashes.clear();
  expect(hashes.size).toBe(0);
});
