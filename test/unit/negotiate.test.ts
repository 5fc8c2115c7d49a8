/** bits-protocol.md §7 protocol negotiation and the TV-6 variants. */
import { negotiateProtocol } from '../../lib/protocol/negotiate';

const BITS15 = '{7df0354d-249b-430f-820d-3d2a9bef4931}';
const OTHER = '{12345678-1234-1234-1234-123456789abc}';

test.each([
  ['exactly as Windows sends it', BITS15],
  ['upper case', BITS15.toUpperCase()],
  ['without braces', BITS15.slice(1, -1)],
  ['second of two, space separated (TV-6)', `${OTHER} {7DF0354D-249B-430F-820D-3D2A9BEF4931}`],
  ['second of two, comma separated (TV-6)', `${OTHER},${BITS15}`],
  ['comma and spaces', `${OTHER} , ${BITS15}`],
  ['tabs and empty items', `\t,,${OTHER}\t\t${BITS15},`],
  ['first supported wins, later entries ignored', `${BITS15} ${OTHER}`],
])('%s → canonical lower-case braced GUID', (_name, offered) => {
  expect(negotiateProtocol(offered)).toBe(BITS15);
});

test.each([
  ['missing header', undefined],
  ['empty header', ''],
  ['only separators', ' , '],
  ['unsupported protocol (TV-6)', OTHER],
  ['one brace only', BITS15.slice(0, -1)],
  ['closing brace only', BITS15.slice(1)],
  ['doubled braces', `{${BITS15}}`],
  ['glued to another GUID', `${OTHER}${BITS15}`],
  ['semicolon separated', `${OTHER};${BITS15}`],
])('%s → 400 + E_INVALIDARG', (_name, offered) => {
  expect(() => negotiateProtocol(offered)).toThrow(expect.objectContaining({ code: 'BITS_PROTOCOL_MISMATCH', status: 400 }));
});
