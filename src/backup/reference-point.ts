import { Client } from "pg";
import { clientConfig, type Credentials } from "../postgres/connection";
import type { NodeRef } from "../nodes/node-driver";

/** One table's content, summarised the same way on the source and on a restored copy. */
export interface TableChecksum {
  readonly database: string;
  /** Schema-qualified, quoted as PostgreSQL quotes it. */
  readonly table: string;
  readonly rows: number;
  /** Sum over the rows of the first 60 bits of md5(row as text): order-independent, no sort. */
  readonly checksum: string;
}

/**
 * A named restore point taken right after a backup, with the checksum of
 * every table as of exactly that point: the restore test restores to it and
 * compares.
 */
export interface ReferencePoint {
  readonly name: string;
  readonly lsn: string;
  /** The WAL segment holding the restore point (switched right after, so it is archived soon). */
  readonly walFile: string;
  readonly createdAt: string;
  readonly tables: readonly TableChecksum[];
}

/** The tables compared: permanent ordinary tables (and partitions) outside the system schemas. */
const TABLES_SQL = `
  SELECT format('%I.%I', n.nspname, c.relname) AS name
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND c.relpersistence = 'p'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  ORDER BY 1`;

/** One table's checksum, the same query on the source and on a restored copy. */
async function tableChecksum(client: Client, database: string, table: string): Promise<TableChecksum> {
  const row = (
    await client.query<{ rows: string; checksum: string }>(
      `SELECT count(*)::bigint AS rows, coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text AS checksum FROM ONLY ${table} t`,
    )
  ).rows[0]!;
  return { database, table, rows: Number(row.rows), checksum: row.checksum };
}

async function connect(node: NodeRef, credentials: Credentials, database: string): Promise<Client> {
  const client = new Client({ ...clientConfig(node, { ...credentials, database }, 30000), statement_timeout: 0, query_timeout: undefined });
  client.on("error", () => undefined); // a dropped session fails the query in progress
  await client.connect();
  return client;
}

async function databasesOf(node: NodeRef, credentials: Credentials): Promise<string[]> {
  const client = await connect(node, credentials, credentials.database);
  try {
    return (
      await client.query<{ datname: string }>("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
    ).rows.map((row) => row.datname);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function checksumsIn(client: Client, database: string): Promise<TableChecksum[]> {
  const result: TableChecksum[] = [];
  for (const { name } of (await client.query<{ name: string }>(TABLES_SQL)).rows) result.push(await tableChecksum(client, database, name));
  return result;
}

/**
 * Takes the restore point `name` on the primary and the checksums of the
 * state it names. Exactness under concurrent writers: in every database one
 * session takes SHARE locks on all its tables (writers wait; at most
 * `lockTimeoutMs`) and exports its snapshot, a second session adopts that
 * snapshot; only then is the restore point written and the locks released.
 * The checksums are computed on the adopted snapshots while writers go on.
 * A table created after the locks may exist at the point and not here:
 * only the tables recorded are compared.
 */
export async function captureReferencePoint(
  primary: NodeRef,
  credentials: Credentials,
  name: string,
  lockTimeoutMs: number,
): Promise<ReferencePoint> {
  const lockers: Client[] = [];
  const readers: Array<{ database: string; client: Client }> = [];
  try {
    for (const database of await databasesOf(primary, credentials)) {
      const locker = await connect(primary, credentials, database);
      lockers.push(locker);
      // Listed before the transaction: in REPEATABLE READ the first query
      // fixes the snapshot, and it must come after the locks (LOCK takes none).
      const tables = (await locker.query<{ name: string }>(TABLES_SQL)).rows.map((row) => row.name);
      await locker.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
      await locker.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.floor(lockTimeoutMs))}`);
      if (tables.length > 0) await locker.query(`LOCK TABLE ${tables.join(", ")} IN SHARE MODE`);
      const snapshot = (await locker.query<{ id: string }>("SELECT pg_export_snapshot() AS id")).rows[0]!.id;
      const reader = await connect(primary, credentials, database);
      readers.push({ database, client: reader });
      await reader.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      await reader.query(`SET TRANSACTION SNAPSHOT '${snapshot.replace(/'/g, "''")}'`);
    }
    const point = (
      await lockers[0]!.query<{ lsn: string; file: string }>(
        "SELECT lsn::text, pg_walfile_name(lsn) AS file FROM pg_create_restore_point($1) AS lsn",
        [name],
      )
    ).rows[0]!;
    const createdAt = new Date().toISOString();
    for (const locker of lockers) await locker.query("COMMIT");
    // Close the segment, so that the restore test does not wait for it to fill.
    await lockers[0]!.query("SELECT pg_switch_wal()");
    const tables: TableChecksum[] = [];
    for (const { database, client } of readers) tables.push(...(await checksumsIn(client, database)));
    return { name, lsn: point.lsn, walFile: point.file, createdAt, tables };
  } finally {
    for (const client of [...lockers, ...readers.map((reader) => reader.client)]) await client.end().catch(() => undefined);
  }
}

/** The same checksums on a (restored, quiet) node, for the tables recorded. */
export async function checksumsOn(node: NodeRef, credentials: Credentials, recorded: readonly TableChecksum[]): Promise<TableChecksum[]> {
  const result: TableChecksum[] = [];
  for (const database of [...new Set(recorded.map((entry) => entry.database))]) {
    const client = await connect(node, credentials, database);
    try {
      for (const entry of recorded.filter((candidate) => candidate.database === database)) {
        const exists = (await client.query<{ found: boolean }>("SELECT to_regclass($1) IS NOT NULL AS found", [entry.table])).rows[0]!
          .found;
        if (!exists) continue; // reported as missing
        result.push(await tableChecksum(client, database, entry.table));
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  return result;
}

/** Pure: the recorded tables whose content differs (or is missing) on the copy, described. */
export function checksumMismatches(recorded: readonly TableChecksum[], actual: readonly TableChecksum[]): string[] {
  const found = new Map(actual.map((entry) => [`${entry.database}/${entry.table}`, entry]));
  const mismatches: string[] = [];
  for (const expected of recorded) {
    const got = found.get(`${expected.database}/${expected.table}`);
    if (!got) mismatches.push(`${expected.database}: ${expected.table} missing`);
    else if (got.rows !== expected.rows || got.checksum !== expected.checksum) {
      mismatches.push(`${expected.database}: ${expected.table} differs (${got.rows} rows, expected ${expected.rows})`);
    }
  }
  return mismatches;
}
