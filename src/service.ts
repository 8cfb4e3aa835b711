// The service's entry point; its start, step by step, is in src/service/ (start-relevo.ts first).
export { startRelevo, type StartOptions } from "./service/start-relevo";
export type { RelevoService } from "./service/relevo-service";
