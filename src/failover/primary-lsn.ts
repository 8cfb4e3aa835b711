import type Redis from "ioredis";

/**
 * The primary's last LSN seen (by the monitor's checks, or at a promotion),
 * tied to that node: the bound of what an asynchronous failover loses, read
 * by whichever instance runs the failover.
 */
export async function recordPrimaryLsn(redis: Redis, key: string, node: string, lsn: string): Promise<void> {
  await redis.set(key, JSON.stringify({ node, lsn }));
}

export async function lastSeenPrimaryLsn(redis: Redis, key: string): Promise<{ node: string; lsn: string } | null> {
  const raw = await redis.get(key);
  return raw ? (JSON.parse(raw) as { node: string; lsn: string }) : null;
}
