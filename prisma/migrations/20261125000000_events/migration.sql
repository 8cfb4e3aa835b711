-- CreateTable
CREATE TABLE "events" (
    "id" UUID NOT NULL,
    "stream_id" TEXT NOT NULL,
    "kind" TEXT NOT NULL,
    "severity" TEXT NOT NULL,
    "node" TEXT,
    "message" TEXT NOT NULL,
    "data" JSONB NOT NULL DEFAULT '{}',
    "actor_id" TEXT,
    "actor_role" TEXT,
    "occurred_at" TIMESTAMPTZ(3) NOT NULL,
    "recorded_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "events_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "events_stream_id_key" ON "events"("stream_id");

-- CreateIndex
CREATE INDEX "events_kind_occurred_at_idx" ON "events"("kind", "occurred_at");

-- CreateIndex
CREATE INDEX "events_node_occurred_at_idx" ON "events"("node", "occurred_at");
