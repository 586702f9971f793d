// One turn of a service: a handler reads the dispatch and chooses one action. The handler
// is a plain function (dispatch, turn) => void; `turn` collects output and the action, and
// `toFields()` gives the reply's fields.

export class Turn {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.output = [];
    this.fields = undefined;
  }

  /** Add messages for the person, shown before whatever the action causes. */
  say(...messages) {
    this.output.push(...messages);
  }

  #choose(fields) {
    if (this.fields !== undefined) {
      throw new Error(`a turn takes one action; ${this.fields.action} was already chosen`);
    }
    this.fields = fields;
  }

  /** Answer and stay; `state` undefined keeps the saved state, null clears it. */
  reply(messages = [], { state, idle } = {}) {
    this.say(...messages);
    this.#choose({ action: "reply", state, idle });
  }

  open(service, args, { state, idle } = {}) {
    this.#choose({ action: "open", service, args, state, idle });
  }

  replace(service, args) {
    this.#choose({ action: "replace", service, args });
  }

  close(result) {
    this.#choose({ action: "close", result });
  }

  pass() {
    this.#choose({ action: "pass" });
  }

  fail(code, message = "") {
    this.#choose({ action: "fail", error: { code, message } });
  }

  /** The reply's fields: no action chosen is a `reply` that keeps the state. */
  toFields() {
    const fields = this.fields ?? { action: "reply" };
    return { ...fields, output: this.output.length ? this.output : undefined };
  }
}

/**
 * A service: handlers by event, and `on_result` handlers by the child service's name.
 * Defaults (the same as the contract's safe choices): no `message` handler passes; an
 * `idle` with no handler keeps the state and sets no timer; a child's failure that no
 * handler takes fails this frame with the same error, a success is a reply keeping state.
 */
export class Service {
  constructor(name, { start, message, idle, results = {} } = {}) {
    this.name = name;
    this.handlers = { start, message, idle };
    this.results = results;
  }

  handle(dispatch) {
    const turn = new Turn(dispatch);
    if (dispatch.event === "result") {
      const handler = this.results[dispatch.result.service];
      if (handler) handler(dispatch, turn);
      else if (!dispatch.result.ok) {
        const error = dispatch.result.error ?? {};
        turn.fail(String(error.code ?? "error"), String(error.message ?? ""));
      }
    } else {
      const handler = this.handlers[dispatch.event];
      if (handler) handler(dispatch, turn);
      else if (dispatch.event === "message") turn.pass();
    }
    return turn.toFields();
  }
}
