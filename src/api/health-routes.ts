import type { Request, Response, Router } from "express";
import express from "express";
import type { ApiServices } from "./context";

/**
 * Load-balancer checks, without a token and revealing only status:
 * GET /nodes/:name/primary → 200 when that node is a reachable primary,
 * GET /nodes/:name/replica → 200 when it is a reachable, streaming replica,
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
    let snapshot;
    try {
      snapshot = await services.topology.read();
    } catch {
      snapshot = null;
    }
    if (!snapshot) {
      res.status(503).json({ status: "unknown" });
      return;
    }
    const node = snapshot.nodes.find((candidate) => candidate.name === req.params.name);
    if (!node) {
      res.status(404).json({ status: "unknown node" });
      return;
    }
    const healthy =
      node.reachable &&
      node.role === role &&
      (role === "primary" ? snapshot.primary === node.name : node.replication?.state === "streaming");
    res.status(healthy ? 200 : 503).json({ status: healthy ? "ok" : "unavailable" });
  });
  return router;
}
