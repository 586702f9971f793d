// The AMQP side of a service, as docs/protocol.md asks: declare `NS.service.NAME` (durable,
// `x-queue-type` from CLOUDBUNCH_QUEUE_TYPE), consume with manual acks, answer every
// dispatch (copies too), publish each reply persistent, mandatory, msgpack, with publisher
// confirms, and acknowledge the dispatch only once its reply is confirmed. Replies go through
// the exchange `NS.x.replies` (contract 1.1) when the broker has it, else to `NS.replies` on
// the default exchange (version 1). Reconnects when the connection is lost; stops on SIGTERM.

import { randomUUID } from "node:crypto";
import amqp from "amqplib";
import * as wire from "./wire.js";

const DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/";
/** How often a service replying to the default exchange looks for `NS.x.replies` again. */
const REPROBE_MS = 30000;

/** A setting a person got wrong; main prints its one line and exits 2. */
export class ConfigError extends Error {}

/** The CLOUDBUNCH_* settings a service reads (the same names as every other party). */
export function settingsFromEnv(env = process.env) {
  const url = env.CLOUDBUNCH_AMQP_URL ?? DEFAULT_AMQP_URL;
  if (!/^amqps?:\/\//i.test(url)) {
    throw new ConfigError(
      `CLOUDBUNCH_AMQP_URL must start with amqp:// or amqps://, not ${JSON.stringify(redact(url))}`,
    );
  }
  const namespace = env.CLOUDBUNCH_NAMESPACE ?? "cb";
  if (!namespace || /[\s{}]/u.test(namespace)) {
    throw new ConfigError(
      `CLOUDBUNCH_NAMESPACE must be a non-empty word without spaces or braces, not ${JSON.stringify(namespace)}`,
    );
  }
  const queueType = env.CLOUDBUNCH_QUEUE_TYPE ?? "quorum";
  if (queueType !== "quorum" && queueType !== "classic") {
    throw new ConfigError(
      `CLOUDBUNCH_QUEUE_TYPE must be 'quorum' or 'classic', not ${JSON.stringify(queueType)}`,
    );
  }
  const prefetch = Number(env.CLOUDBUNCH_PREFETCH ?? "16");
  if (!Number.isInteger(prefetch) || prefetch < 1) {
    throw new ConfigError(
      `CLOUDBUNCH_PREFETCH must be an integer >= 1, not ${JSON.stringify(env.CLOUDBUNCH_PREFETCH)}`,
    );
  }
  return { url, namespace, queueType, prefetch };
}

/** The URL without its password, fit for a log line. */
export function redact(url) {
  return url.replace(/^(amqps?:\/\/[^:/@]*):[^@/]*@/iu, "$1:***@");
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function logger(prefix, env = process.env) {
  const debug = (env.CLOUDBUNCH_LOG_LEVEL ?? "").toLowerCase() === "debug";
  const line = (level, message) => {
    process.stderr.write(`${new Date().toISOString()} ${level} ${prefix}: ${message}\n`);
  };
  return {
    debug: (m) => debug && line("DEBUG", m),
    info: (m) => line("INFO", m),
    warn: (m) => line("WARNING", m),
    error: (m) => line("ERROR", m),
  };
}

export class Worker {
  constructor(services, settings, log = logger("cloudbunch-node")) {
    this.services = services;
    this.settings = settings;
    this.names = wire.names(settings.namespace);
    this.log = log;
    this.stopping = false;
    this.inflight = new Set();
    this.connection = null;
    this.channel = null;
    this.consumers = [];
    this.wake = null; // ends a pause between connection attempts
    this.release = null; // ends the current connection once stop() has drained it
  }

  /** Serve until stop(): connect, consume, and connect again whenever the connection drops. */
  async run() {
    let delay = 200;
    while (!this.stopping) {
      try {
        await this.#serveOnce();
        delay = 200;
      } catch (err) {
        if (this.stopping) break;
        this.log.warn(
          `broker at ${redact(this.settings.url)} unavailable (${err.message}); retrying in ${delay} ms`,
        );
        await this.#pause(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
    this.log.info("stopped");
  }

  /** Stop consuming, finish the turns in hand (their replies confirmed), then disconnect. */
  async stop(graceMs = 10000) {
    if (this.stopping) return;
    this.stopping = true;
    this.wake?.();
    const channel = this.channel;
    if (channel) {
      for (const tag of this.consumers) {
        await channel.cancel(tag).catch(() => {});
      }
    }
    const pending = Promise.allSettled([...this.inflight]);
    await Promise.race([pending, sleep(graceMs)]);
    this.release?.();
  }

  #pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async #serveOnce() {
    const connection = await amqp.connect(this.settings.url, {
      clientProperties: {
        connection_name: `cloudbunch-node ${this.settings.namespace} ${this.services.map((s) => s.name).join(",")}`,
      },
    });
    this.connection = connection;
    const lost = new Promise((resolve) => {
      connection.on("close", (err) => resolve(err));
      this.release = () => resolve(null);
    });
    connection.on("error", (err) => this.log.warn(`connection error: ${err.message}`));
    try {
      const channel = await connection.createConfirmChannel();
      this.channel = channel;
      channel.on("error", (err) => this.log.warn(`channel error: ${err.message}`));
      // A channel closed by the broker (a refused publish, a deleted queue) ends this
      // connection too: the next one declares and consumes afresh.
      channel.on("close", () => {
        if (!this.stopping) connection.close().catch(() => {});
      });
      const returned = new Set();
      channel.on("return", (msg) => returned.add(msg.properties.messageId));
      await channel.prefetch(this.settings.prefetch);
      const route = await this.#replyRoute(connection);
      this.consumers = [];
      if (this.stopping) return;
      for (const service of this.services) {
        const queue = this.names.service(service.name);
        await channel.assertQueue(queue, {
          durable: true,
          exclusive: false,
          autoDelete: false,
          arguments: { "x-queue-type": this.settings.queueType },
        });
        const { consumerTag } = await channel.consume(
          queue,
          (msg) => this.#onDelivery(channel, service, msg, route, returned),
          { noAck: false },
        );
        this.consumers.push(consumerTag);
      }
      this.log.info(
        `serving ${this.services.map((s) => this.names.service(s.name)).join(", ")}; replies to ${
          route.exchange ? `exchange ${route.exchange}` : `queue ${route.routingKey}`
        }`,
      );
      const err = await lost;
      if (!this.stopping) {
        this.log.warn(`connection lost (${err?.message ?? "closed"}); reconnecting`);
      }
    } finally {
      this.channel = null;
      await connection.close().catch(() => {});
    }
  }

  /**
   * Where replies go: the exchange `NS.x.replies` when the broker has it (a passive declare,
   * on a channel of its own because a missing exchange closes the channel that asked), else
   * the queue `NS.replies` through the default exchange.
   */
  async #replyRoute(connection) {
    const probe = await connection.createChannel();
    probe.on("error", () => {});
    try {
      await probe.checkExchange(this.names.repliesExchange);
      await probe.close().catch(() => {});
      return { exchange: this.names.repliesExchange, routingKey: this.names.repliesKey, connection };
    } catch {
      this.log.info(
        `no exchange ${this.names.repliesExchange} (a router of contract version 1): replying to queue ${this.names.replies}`,
      );
      return { exchange: "", routingKey: this.names.replies, connection, checked: Date.now() };
    }
  }

  #onDelivery(channel, service, msg, route, returned) {
    if (msg === null) {
      // The broker cancelled the consumer (its queue was deleted): start over.
      this.log.warn(`consumer of ${this.names.service(service.name)} cancelled by the broker`);
      channel.close().catch(() => {});
      return;
    }
    const task = this.#answer(channel, service, msg, route, returned)
      .catch((err) => this.log.warn(`dispatch left unacknowledged: ${err.message}`))
      .finally(() => this.inflight.delete(task));
    this.inflight.add(task);
  }

  async #answer(channel, service, msg, route, returned) {
    let dispatch;
    try {
      dispatch = wire.decodeDispatch(msg.content);
    } catch (err) {
      // Nothing to echo a reply to: the router never sends such a body. Drop it once.
      this.log.warn(`dropped a body on ${this.names.service(service.name)}: ${err.message}`);
      channel.ack(msg);
      return;
    }
    let fields;
    if (dispatch.problem) {
      fields = { action: "fail", error: { code: "invalid_dispatch", message: dispatch.problem } };
    } else {
      try {
        fields = service.handle(dispatch);
      } catch (err) {
        this.log.error(`${service.name} failed on turn ${dispatch.turn}: ${err.stack ?? err}`);
        fields = { action: "fail", error: { code: "exception", message: `${err.name}: ${err.message}` } };
      }
    }
    if (route.checked !== undefined && Date.now() - route.checked > REPROBE_MS) {
      // A router of version 1.1 started after this connection: use its exchange from now on.
      const found = await this.#replyRoute(route.connection);
      Object.assign(route, { checked: undefined }, found);
    }
    const body = wire.encode(wire.replyBody(dispatch, fields));
    const send = async (routingKey) => {
      const messageId = randomUUID();
      await new Promise((resolve, reject) => {
        channel.publish(
          route.exchange,
          routingKey,
          Buffer.from(body.buffer, body.byteOffset, body.byteLength),
          {
            persistent: true,
            mandatory: true,
            contentType: wire.CONTENT_TYPE,
            messageId,
            headers: wire.traceHeaders(msg.properties.headers),
          },
          (err) => (err ? reject(new Error(`reply to turn ${dispatch.turn} not confirmed`)) : resolve()),
        );
      });
      return returned.delete(messageId);
    };
    // A partitioned namespace (routers with --partitions) names the reply's partition in the
    // dispatch's reply_to; a partition that is gone falls back to the shared queue.
    const key = route.exchange ? wire.replyKey(msg.properties.replyTo) : route.routingKey;
    let wasReturned = await send(key);
    if (wasReturned && key !== route.routingKey) wasReturned = await send(route.routingKey);
    if (wasReturned) {
      // Unroutable: no router has declared NS.replies (or bound it). Acknowledging is safe:
      // the router re-dispatches the turn after its deadline.
      this.log.error(
        `reply to turn ${dispatch.turn} was returned by the broker: nothing consumes ${this.names.replies}; is the router running in namespace ${this.settings.namespace}?`,
      );
    }
    this.log.debug(`${service.name} ${dispatch.event} -> ${fields.action} (turn ${dispatch.turn})`);
    channel.ack(msg);
  }
}
