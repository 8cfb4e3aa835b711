import type { RelevoConfig } from "../config/config";
import type { Logger } from "../log";

/** Stops one thing a start step started. */
export type Cleanup = () => Promise<void> | void;

/**
 * What the start steps started, as the steps that stop it: each step pushes
 * its cleanups in the order it starts things, and unwind runs them in
 * reverse, so a failed start (or a stop) leaves nothing running. A cleanup
 * that fails is logged and the unwinding goes on.
 */
export class Cleanups {
  private readonly steps: Cleanup[] = [];

  constructor(private readonly logger: Logger) {}

  push(cleanup: Cleanup): void {
    this.steps.push(cleanup);
  }

  /** Leaves something running at the unwind (the nodes or Redis, when a stop is told to keep them). */
  remove(cleanup: Cleanup): void {
    const index = this.steps.indexOf(cleanup);
    if (index >= 0) this.steps.splice(index, 1);
  }

  async unwind(): Promise<void> {
    for (const cleanup of this.steps.reverse()) {
      // A cleanup that throws, or one whose promise rejects, is logged alike.
      await new Promise<void>((resolve) => resolve(cleanup())).catch((error) =>
        this.logger.warn({ err: (error as Error).message }, "cleanup step failed"),
      );
    }
    this.steps.length = 0;
  }
}

/** What every start step is given: the configuration, the logger, and the cleanups it pushes what it starts onto. */
export interface StartContext {
  readonly config: RelevoConfig;
  readonly logger: Logger;
  readonly cleanups: Cleanups;
}
