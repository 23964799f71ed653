// Reads a text/event-stream body: what EventSource does, but over fetch. EventSource cannot send an
// Authorization header, and the alternatives are worse: the key in the URL ends up in logs and history, and a
// session cookie would need CSRF defences on every POST. fetch keeps one way of authenticating for the API.

// Calls onEvent({type, data, id}) for each event; returns when the stream ends.
export async function readEventStream(response, onEvent, signal) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  const line = (text) => {
    if (text === "") {
      if (event.data.length) onEvent({ type: event.type, data: event.data.join("\n"), id: event.id });
      event = { type: "message", data: [], id: null };
      return;
    }
    if (text.startsWith(":")) return; // a comment: the server's keep-alive ping
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
    else if (field === "id") event.id = value;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer);
        if (!m || (m[0] === "\r" && m.index === buffer.length - 1)) break; // "\r" may be half of "\r\n"
        line(buffer.slice(0, m.index));
        buffer = buffer.slice(m.index + m[0].length);
      }
    }
    if (buffer) line(buffer);
    line("");
  } finally {
    if (signal && signal.aborted) reader.cancel().catch(() => {});
  }
}
