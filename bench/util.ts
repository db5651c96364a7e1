/** Small helpers shared by the benchmarks. */

/** The p-th percentile (0-100) of a sample, nearest-rank. */
export function pct(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}
