import { loadConfig } from "../../src/config/config";
import { createNodeDriver } from "../../src/nodes/create-driver";
import { describeDriverConformance } from "../helpers/driver-conformance";
import { dockerOverrides, requireDockerEngine } from "../helpers/docker";
import { tempHome } from "../helpers/home";

describeDriverConformance({
  label: "docker",
  makeDriver: async (tls) => {
    await requireDockerEngine();
    return createNodeDriver(loadConfig({}, { home: await tempHome("docker-driver"), ...dockerOverrides("conf") }), { tls });
  },
});
