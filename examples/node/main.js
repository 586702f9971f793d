#!/usr/bin/env node
// Run the pizza flow's Node.js services: `node main.js [checkout] [payment]` (default: both).
// Reads CLOUDBUNCH_AMQP_URL, CLOUDBUNCH_NAMESPACE, CLOUDBUNCH_QUEUE_TYPE, CLOUDBUNCH_PREFETCH
// and CLOUDBUNCH_LOG_LEVEL; stops on SIGTERM or SIGINT, exiting 0.

import { SERVICES } from "./src/pizza.js";
import { ConfigError, logger, settingsFromEnv, Worker } from "./src/worker.js";

const log = logger("cloudbunch-node");
const wanted = process.argv.slice(2);
const unknown = wanted.filter((name) => !Object.hasOwn(SERVICES, name));
if (unknown.length) {
  log.error(`unknown service ${unknown.join(", ")}: this program serves ${Object.keys(SERVICES).join(", ")}`);
  process.exit(2);
}
let settings;
try {
  settings = settingsFromEnv();
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  log.error(err.message);
  process.exit(2);
}
const services = (wanted.length ? wanted : Object.keys(SERVICES)).map((name) => SERVICES[name]);
const worker = new Worker(services, settings, log);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    log.info(`${signal}: stopping`);
    worker.stop().catch((err) => log.error(`stop: ${err.message}`));
  });
}
await worker.run();
process.exit(0);
