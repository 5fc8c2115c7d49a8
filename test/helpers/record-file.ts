import { promises as fs } from 'node:fs';

/**
 * The record a FileSystemStorage record.json holds: its last non-empty line (updates are appended
 * as lines; a file written whole has one). Throws when that line is not JSON.
 */
export async function readStoredRecord(file: string): Promise<Record<string, unknown>> {
  const lines = (await fs.readFile(file, 'utf8')).split('\n').filter((line) => line.trim() !== '');
  return JSON.parse(lines.at(-1) ?? '') as Record<string, unknown>;
}
