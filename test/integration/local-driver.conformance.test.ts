import { loadConfig } from "../../src/config/config";
import { createNodeDriver } from "../../src/nodes/create-driver";
import { describeDriverConformance } from "../helpers/driver-conformance";
import { tempHome } from "../helpers/home";

describeDriverConformance({
  label: "local",
  makeDriver: async (tls) => createNodeDriver(loadConfig({}, { home: await tempHome("driver") }), { tls }),
});
