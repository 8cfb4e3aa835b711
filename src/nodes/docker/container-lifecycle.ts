import type Docker from "dockerode";
import path from "node:path";
import { ErrorCode, RelevoError } from "../../errors";
import { sleep } from "../../util/sleep";
import type { NodeRef } from "../node-driver";
import { PG_USER, PGDATA } from "./container-spec";
import { engineMessage, isStatus } from "./docker-client";
import { demultiplexBuffer, runContainerCommand } from "./docker-exec";
import { readCommand } from "./file-commands";
import type { NodeContainers } from "./node-containers";

/**
 * Waiting on a node's container as it starts and stops, and signalling it:
 * the lifecycle steps the Docker driver's start, stop, kill and destroy share.
 */

/**
 * Ready as pg_ctl -w means it: postmaster.pid's status line says "ready"
 * (or "standby" for a hot standby). A container that exits meanwhile
 * failed to start: its log says why.
 */
export async function waitUntilReady(
  containers: NodeContainers,
  node: NodeRef,
  container: Docker.Container,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const info = await containers.engine("inspect a starting container", () => container.inspect());
    if (!info.State.Running) {
      throw new RelevoError(
        ErrorCode.CommandFailed,
        `node ${node.name} did not start (container exited with ${info.State.ExitCode}): ${await logTail(container)}`,
        {
          details: { container: info.Name, exitCode: info.State.ExitCode },
        },
      );
    }
    const pidFile = await runContainerCommand(container, readCommand(path.posix.join(PGDATA, "postmaster.pid")), { user: PG_USER }).catch(
      () => null,
    );
    const lines = pidFile?.exitCode === 0 ? pidFile.stdout.toString("utf8").split("\n") : [];
    // A killed server's postmaster.pid says "ready" too: only this start's counts (line 3, its start time).
    const startedAt = Math.floor(Date.parse(info.State.StartedAt) / 1000);
    const current = Number(lines[2]) >= startedAt;
    if (current && (lines[7]?.trim() === "ready" || lines[7]?.trim() === "standby")) return;
    if (Date.now() > deadline) {
      throw new RelevoError(
        ErrorCode.Timeout,
        `node ${node.name} did not accept connections within ${timeoutMs} ms: ${await logTail(container)}`,
      );
    }
    await sleep(100);
  }
}

/** Sends `signal` to the container's PID 1; one that is not running any more is fine. */
export async function signalContainer(containers: NodeContainers, container: Docker.Container, signal: string): Promise<void> {
  await containers.engine(`send ${signal}`, async () => {
    try {
      await container.kill({ signal });
    } catch (error) {
      if (!isStatus(error, 409)) throw error; // 409: not running any more
    }
  });
}

/** Whether the container stopped (or is gone) within `timeoutMs`. */
export async function waitStopped(containers: NodeContainers, container: Docker.Container, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() <= deadline) {
    const info = await containers.engine("inspect a stopping container", async () => {
      try {
        return await container.inspect();
      } catch (error) {
        if (isStatus(error, 404)) return null;
        throw error;
      }
    });
    if (!info?.State.Running) return true;
    await sleep(50);
  }
  return false;
}

/** The last lines of a container's log, for an error message. */
async function logTail(container: Docker.Container): Promise<string> {
  try {
    const logs = demultiplexBuffer(await container.logs({ stdout: true, stderr: true, tail: 8 }));
    return logs.trim().split("\n").slice(-5).join(" | ") || "no log";
  } catch (error) {
    return `no log (${engineMessage(error)})`;
  }
}
