/** The operator's actions on a rollout, as the dashboard's URLs name them. */
export const ROLLOUT_ACTIONS = ["pause", "resume", "abort"] as const;
export type RolloutAction = (typeof ROLLOUT_ACTIONS)[number];
export const isRolloutAction = (s: string): s is RolloutAction =>
  (ROLLOUT_ACTIONS as readonly string[]).includes(s);
