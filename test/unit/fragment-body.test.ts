/** The fragment body stream: skipping held bytes (§6.3 case B) and detecting short bodies. */
import { createHash } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { FragmentBody, readFragmentBody } from '../../lib/protocol/fragment-body';

async function collect(stream: Readable): Promise<string> {
  let text = '';
  for await (const chunk of stream) text += (chunk as Buffer).toString('latin1');
  return text;
}

test.each([
  [0, ['0123456789'], '0123456789'],
  [3, ['0123456789'], '3456789'],
  [3, ['01', '2', '3456789'], '3456789'],
  [3, ['0', '12345', '6789'], '3456789'],
  [10, ['01234', '56789'], ''],
  [4, ['0123', '4', '56789'], '456789'],
])('skip %d of %j → %s', async (skip, chunks, expected) => {
  const body = new FragmentBody(skip, 10);
  const source = Readable.from(chunks.map((chunk) => Buffer.from(chunk)));
  source.pipe(body);
  expect(await collect(body)).toBe(expected);
  expect(body.forwarded).toBe(expected.length);
  expect(body.complete).toBe(true);
});

test('chunks are passed on without copying', async () => {
  const chunk = Buffer.from('0123456789');
  const body = new FragmentBody(0, 10);
  body.end(chunk);
  for await (const piece of body) expect(piece).toBe(chunk);
});

test('a body shorter than declared fails and is not complete', async () => {
  const body = new FragmentBody(0, 10);
  body.end(Buffer.from('01234'));
  await expect(collect(body)).rejects.toThrow('Fragment body ended after 5 of 10 bytes');
  expect(body.complete).toBe(false);
});

test('a body longer than declared fails at once', async () => {
  const body = new FragmentBody(0, 4);
  body.end(Buffer.from('01234'));
  await expect(collect(body)).rejects.toThrow('longer than its Content-Length of 4 bytes');
});

test('readFragmentBody: a source error (client abort) destroys the body with that error', async () => {
  const source = new PassThrough();
  const { body } = readFragmentBody(source, 0, 10);
  source.write(Buffer.from('0123'));
  setImmediate(() => source.destroy(new Error('aborted')));
  await expect(collect(body)).rejects.toThrow('aborted');
  expect(body.complete).toBe(false);
});

test('readFragmentBody: detach leaves the rest of the source unread', async () => {
  const source = new PassThrough();
  const { body, detach } = readFragmentBody(source, 0, 10);
  detach();
  source.end(Buffer.from('0123456789'));
  expect(await collect(source)).toBe('0123456789');
  expect(body.forwarded).toBe(0);
});

test('a hash is fed exactly the bytes handed on, skipped ones left out', async () => {
  const hash = createHash('sha256');
  const body = new FragmentBody(3, 10, hash);
  Readable.from([Buffer.from('01'), Buffer.from('2345'), Buffer.from('6789')]).pipe(body);
  expect(await collect(body)).toBe('3456789');
  expect(hash.digest('hex')).toBe(createHash('sha256').update('3456789').digest('hex'));
});
