-- CreateTable
CREATE TABLE "failovers" (
    "id" UUID NOT NULL,
    "kind" TEXT NOT NULL,
    "trigger" TEXT NOT NULL,
    "from_node" TEXT NOT NULL,
    "to_node" TEXT,
    "status" TEXT NOT NULL,
    "reason" TEXT NOT NULL,
    "error" TEXT,
    "lost_bytes" BIGINT,
    "started_at" TIMESTAMPTZ(3) NOT NULL,
    "fenced_at" TIMESTAMPTZ(3),
    "promoted_at" TIMESTAMPTZ(3),
    "finished_at" TIMESTAMPTZ(3),
    "duration_ms" INTEGER,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "failovers_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "failovers_started_at_idx" ON "failovers"("started_at");
