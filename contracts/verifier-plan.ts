/** Verifier plan selection: a pure, deterministic function of the allow-list, mood, required ids and touched paths. */
import { canonicalJson } from './canonical';
import { scopeMatches } from './glob';
import type { Mood } from './run';
import { sha256Hex } from './sha256';
import type { VerifierCatalog } from './verifiers';

export interface VerifierPlanInput {
  mood: Mood;
  /** The work item's required verifier ids, as requested. */
  required: string[];
  /** Repository-relative paths the run changed (added, modified, deleted, renamed from/to). */
  touchedPaths: string[];
  /** Affects the plan's identity only, never the selection. */
  riskTier: string;
}

/** Why a verifier is in the plan. */
export type SelectionReason = 'required' | 'profile' | `scope:${string}`;

export interface VerifierPlan {
  /** sha256 of `plan:<inputsHash>`. */
  planId: string;
  /** sha256 of the canonical JSON of the inputs and the selection. */
  inputsHash: string;
  /** Selected ids, sorted; each exists in the allow-list. */
  verifierIds: string[];
  /** Required ids absent from the allow-list: reported, and fail the run, never silently dropped. */
  unknownRequired: string[];
  /** For each selected id, every reason it was selected, sorted. */
  reasons: Record<string, SelectionReason[]>;
  mood: Mood;
  touchedPaths: string[];
}

function sortedUnique(values: string[]): string[] {
  return [...new Set(values)].sort();
}

/**
 * The plan is the sorted union of (1) required ids that exist, (2) the mood's profile and (3) every
 * verifier whose `moods` include the mood (or is empty) and one of whose scopes matches a touched
 * path. Paths are used exactly as given (only de-duplicated and sorted): a leading dot is kept.
 */
export function selectVerifierPlan(catalog: VerifierCatalog, input: VerifierPlanInput): VerifierPlan {
  const touchedPaths = sortedUnique(input.touchedPaths);
  const required = sortedUnique(input.required);
  const reasons = new Map<string, Set<SelectionReason>>();
  const add = (id: string, reason: SelectionReason): void => {
    const set = reasons.get(id) ?? new Set<SelectionReason>();
    set.add(reason);
    reasons.set(id, set);
  };

  const unknownRequired: string[] = [];
  for (const id of required) {
    if (catalog.get(id)) add(id, 'required');
    else unknownRequired.push(id);
  }
  for (const id of catalog.profile(input.mood)) {
    if (catalog.get(id)) add(id, 'profile');
  }
  for (const spec of catalog.specs()) {
    if (spec.moods.length > 0 && !spec.moods.includes(input.mood)) continue;
    for (const scope of spec.scopes) {
      if (touchedPaths.some((p) => scopeMatches(scope, p))) add(spec.id, `scope:${scope}`);
    }
  }

  const verifierIds = [...reasons.keys()].sort();
  const inputsHash = sha256Hex(
    canonicalJson({
      touched_paths: touchedPaths,
      mood: input.mood,
      required,
      risk_tier: input.riskTier,
      verifier_ids: verifierIds,
      unknown_required: unknownRequired,
    }),
  );
  return {
    planId: sha256Hex(`plan:${inputsHash}`),
    inputsHash,
    verifierIds,
    unknownRequired,
    reasons: Object.fromEntries(verifierIds.map((id) => [id, [...(reasons.get(id) ?? [])].sort()])),
    mood: input.mood,
    touchedPaths,
  };
}
