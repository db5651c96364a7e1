/** Loads the verifier allow-list (YAML) from platform configuration. */
import { readFile } from 'node:fs/promises';
import { parseVerifierFile, type VerifierCatalog } from '../../contracts';

export type { VerifierCatalog };

/** Reads and validates the allow-list file; throws with the file name and the offending field. */
export async function loadVerifierCatalog(path: string): Promise<VerifierCatalog> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read verifier allow-list ${path}: ${(err as Error).message}`, { cause: err });
  }
  return parseVerifierFile(text, path);
}
