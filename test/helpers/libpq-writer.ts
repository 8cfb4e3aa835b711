/** The benchmark's writer: an application inserting through a multi-host libpq string. */
export { startLibpqWriter, type WriterReport } from "../../bench/failover/libpq-writer";
