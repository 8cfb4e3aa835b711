import type { Request, Response, Router } from "express";
import express from "express";
import type { ClusterSnapshot } from "../cluster/topology";
import type { ApiServices } from "./context";

type CheckedRole = "primary" | "replica";

/**
 * Load-balancer checks, without a token and revealing only status:
 * GET /nodes/:name/primary → 200 when that node is a reachable primary,
 * GET /nodes/:name/replica → 200 when it is a reachable, streaming replica
 * (with ?maxLagBytes=N, also at most N bytes behind; a malformed N is 400),
 * 503 otherwise, 404 for an unknown node. GET /health → 200 while the
 * service can read its state from Redis.
 */
export function healthRoutes(services: ApiServices): Router {
  const router = express.Router();
  router.get("/health", async (_req: Request, res: Response) => {
    try {
      await services.redis.ping();
      res.status(200).json({ status: "ok" });
    } catch {
      res.status(503).json({ status: "unavailable" });
    }
  });
  router.get("/nodes/:name/:role", async (req: Request, res: Response) => {
    const role = req.params.role;
    if (role !== "primary" && role !== "replica") {
      res.status(404).json({ status: "unknown check" });
      return;
    }
    const maxLagBytes = parseMaxLagBytes(req.query.maxLagBytes);
    if (maxLagBytes === "invalid") {
      res.status(400).json({ status: "bad maxLagBytes" });
      return;
    }
    let snapshot;
    try {
      snapshot = await services.topology.read();
    } catch {
      snapshot = null;
    }
    const { status, body } = nodeCheck(snapshot, String(req.params.name), role, maxLagBytes);
    res.status(status).json({ status: body });
  });
  return router;
}

/** ?maxLagBytes: absent (null), a non-negative integer, or invalid (anything else, repeated included). */
function parseMaxLagBytes(value: unknown): number | null | "invalid" {
  if (value === undefined) return null;
  if (typeof value !== "string" || !/^\d{1,15}$/.test(value)) return "invalid";
  return Number(value);
}

/** The answer to one node check, from the last topology snapshot. Pure. */
export function nodeCheck(
  snapshot: ClusterSnapshot | null,
  name: string,
  role: CheckedRole,
  maxLagBytes: number | null,
): { status: number; body: string } {
  if (!snapshot) return { status: 503, body: "unknown" };
  const node = snapshot.nodes.find((candidate) => candidate.name === name);
  if (!node) return { status: 404, body: "unknown node" };
  let healthy = node.reachable && node.role === role;
  if (role === "primary") {
    healthy &&= snapshot.primary === node.name;
  } else {
    const lagBytes = node.replication?.lagBytes ?? null;
    healthy &&= node.replication?.state === "streaming" && (maxLagBytes === null || (lagBytes !== null && lagBytes <= maxLagBytes));
  }
  return healthy ? { status: 200, body: "ok" } : { status: 503, body: "unavailable" };
}
