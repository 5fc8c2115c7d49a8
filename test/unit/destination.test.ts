/** bits-protocol.md §3.2 step 2: request-target → Destination, refusing anything that could escape or confuse. */
import { checkDestination, parseDestination } from '../../lib/protocol/destination';

describe('valid destinations', () => {
  test.each([
    ['/report.bin', ['report.bin'], '/report.bin'],
    ['/dir/sub/report.bin', ['dir', 'sub', 'report.bin'], '/dir/sub/report.bin'],
    ['/report.bin?x=1&y=2', ['report.bin'], '/report.bin'],
    ['/report.bin#frag', ['report.bin'], '/report.bin'],
    ['/report%20final.bin', ['report final.bin'], '/report%20final.bin'],
    ['/%72eport.bin', ['report.bin'], '/report.bin'],
    ['/caf%C3%A9.txt', ['café.txt'], '/caf%C3%A9.txt'],
    ['/.hidden', ['.hidden'], '/.hidden'],
    ['/...x', ['...x'], '/...x'],
    ['/a..b', ['a..b'], '/a..b'],
    ['/CONSOLE.txt', ['CONSOLE.txt'], '/CONSOLE.txt'],
    ['/COM10', ['COM10'], '/COM10'],
    ['/LPT0.txt', ['LPT0.txt'], '/LPT0.txt'],
    ['/x.CON', ['x.CON'], '/x.CON'],
    ['/.bits-sessions2', ['.bits-sessions2'], '/.bits-sessions2'],
    ['/bits-sessions2', ['bits-sessions2'], '/bits-sessions2'],
    ['/dir/BITS-Sessions/x', ['dir', 'BITS-Sessions', 'x'], '/dir/BITS-Sessions/x'],
    ['/ leading-space', [' leading-space'], '/%20leading-space'],
    ['/file+name(1)~.tar.gz', ['file+name(1)~.tar.gz'], '/file%2Bname(1)~.tar.gz'],
    [`/${'a'.repeat(255)}`, ['a'.repeat(255)], `/${'a'.repeat(255)}`],
    ['http://bits.example.test/dir/report.bin', ['dir', 'report.bin'], '/dir/report.bin'],
    ['https://host:8443/report.bin?q', ['report.bin'], '/report.bin'],
  ])('%s', (target, destination, urlPath) => {
    expect(parseDestination(target)).toEqual({ destination, urlPath });
  });

  test('the destination is frozen', () => {
    expect(Object.isFrozen(parseDestination('/a/b').destination)).toBe(true);
  });
});

describe('rejected with 400 + E_INVALIDARG', () => {
  test.each([
    ['mount root', '/'],
    ['empty target', ''],
    ['absolute-form mount root', 'http://host/'],
    ['absolute-form without path', 'http://host'],
    ['asterisk-form', '*'],
    ['authority-form', 'host:443'],
    ['relative path', 'report.bin'],
    ['trailing slash', '/dir/'],
    ['empty segment', '/dir//report.bin'],
    ['leading double slash', '//report.bin'],
    ['dot dot', '/../report.bin'],
    ['dot dot in the middle', '/a/../b'],
    ['dot', '/./report.bin'],
    ['trailing dot segment', '/a/.'],
    ['encoded dot dot', '/%2e%2e/report.bin'],
    ['encoded dot dot, upper case', '/%2E%2E/x'],
    ['half encoded dot dot', '/.%2e/x'],
    ['encoded dot', '/%2e/x'],
    ['encoded slash', '/a%2Fb'],
    ['encoded slash, lower case', '/a%2fb'],
    ['encoded backslash', '/a%5Cb'],
    ['encoded dot dot slash', '/%2e%2e%2fetc'],
    ['backslash', '/a\\b'],
    ['backslash dot dot', '/..\\x'],
    ['NUL', '/a%00b'],
    ['control character', '/a%01b'],
    ['newline', '/a%0Ab'],
    ['DEL', '/a%7Fb'],
    ['C1 control', '/a%C2%85b'],
    ['invalid percent', '/a%zzb'],
    ['truncated percent', '/a%2'],
    ['lone percent', '/100%'],
    ['percent-encoded invalid UTF-8', '/a%FFb'],
    ['drive letter', '/C:'],
    ['drive letter path', '/C:/Windows/x'],
    ['encoded drive letter', '/C%3A'],
    ['alternate data stream', '/report.bin:stream'],
    ['less than', '/a<b'],
    ['greater than', '/a%3Eb'],
    ['double quote', '/a%22b'],
    ['pipe', '/a|b'],
    ['question mark (encoded)', '/a%3Fb'],
    ['asterisk', '/a*b'],
    ['CON', '/CON'],
    ['con lower case', '/con'],
    ['CON with extension', '/CON.txt'],
    ['con with two extensions', '/con.tar.gz'],
    ['NUL in a folder', '/dir/nul'],
    ['PRN', '/PRN.log'],
    ['AUX', '/Aux'],
    ['COM1', '/COM1'],
    ['COM9 with extension', '/com9.bin'],
    ['LPT1', '/LPT1'],
    ['LPT9', '/lpt9.x'],
    ['COM superscript one', '/COM%C2%B9'],
    ['CONIN$', '/CONIN$'],
    ['device name with trailing space before extension', '/NUL%20.txt'],
    ['trailing dot', '/report.'],
    ['trailing space', '/report%20'],
    ['trailing dots', '/dir.../x'],
    ['256-byte name', `/${'a'.repeat(256)}`],
    ['256 bytes of UTF-8', `/${'%C3%A9'.repeat(128)}`],
    ['session folder', '/.bits-sessions'],
    ['session folder, other case', '/.BITS-Sessions/x'],
    ['reply folder (§10.5)', '/BITS-Sessions/Replies/x/responsefile.bin'],
    ['reply folder, other case', '/bits-sessions'],
    ['reply folder, percent-encoded', '/BITS%2DSessions/x'],
    ['session folder deeper', '/a/.bits-sessions/x'],
  ])('%s: %j', (_why, target) => {
    expect(() => parseDestination(target)).toThrow(
      expect.objectContaining({ code: 'BITS_INVALID_DESTINATION', status: 400, hresult: 0x80070057 }),
    );
  });
});

describe('checkDestination: what the destination hook returns gets the URL rules (§3.2 step 2)', () => {
  test('valid names are taken over, frozen, as a copy', () => {
    const names = ['incoming', '2024', 'report final.bin'];
    const checked = checkDestination(names);
    expect(checked).toEqual(names);
    expect(checked).not.toBe(names);
    expect(Object.isFrozen(checked)).toBe(true);
  });

  test.each([
    ['not an array', 'a/b'],
    ['an empty array', []],
    ['an empty name', ['a', '']],
    ['a non-string name', ['a', 1]],
    ['dot dot', ['..']],
    ['a slash in a name', ['a/b']],
    ['a backslash in a name', ['a\\b']],
    ['NUL', ['a\u0000b']],
    ['a drive letter', ['C:']],
    ['a device name', ['com1.txt']],
    ['a trailing dot', ['a.']],
    ['a name over 255 bytes', ['é'.repeat(128)]],
    ['the session folder', ['.BITS-Sessions']],
  ])('%s → 400 + E_INVALIDARG', (_name, value) => {
    expect(() => checkDestination(value)).toThrow(expect.objectContaining({ code: 'BITS_INVALID_DESTINATION', status: 400 }));
  });
});
