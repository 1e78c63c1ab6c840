// A chat built only with the React hooks, for the Chromium test (tests/browser.rs): the page's
// fragment says where the relay is, who this is and which token to use. `window.app` lets the
// test type, send and unmount.
import { createRoot } from "react-dom/client";
import { StrictMode, useState } from "react";
import { EdgeRelay } from "../../src/index.js";
import { useConnectionState, useMessages, usePresence, useRoom, useTyping } from "../../src/react.js";

const params = new URLSearchParams(location.hash.slice(1));
const relay = new EdgeRelay({ token: params.get("token"), transport: "websocket", webSocketUrl: params.get("ws") });
relay.connect();

function Chat({ name }) {
  const status = useConnectionState(relay);
  const { room, joined } = useRoom(relay, name);
  const { messages, hasEarlier } = useMessages(room, { initial: 30 });
  const members = usePresence(room);
  const typing = useTyping(room);
  window.app.room = room;
  return (
    <div>
      <p id="status">{status.state}{status.transport ? ` over ${status.transport}` : ""}</p>
      <p id="joined">{joined ? "joined" : "joining"}</p>
      <ul id="members">{members.map((m) => <li key={m.user}>{m.user}:{m.status}</li>)}</ul>
      <p id="typing">{typing.text}</p>
      <p id="earlier">{String(hasEarlier)}</p>
      <ol id="messages">{messages.map((m) => <li key={m.position.offset}>{m.position.offset} {m.from}: {m.data.text}</li>)}</ol>
    </div>
  );
}

function App() {
  const [shown, setShown] = useState(true);
  window.app.unmount = () => setShown(false);
  return shown ? <Chat name="chat:react" /> : <p id="gone">unmounted</p>;
}

window.app = {
  relay,
  send: (text) => window.app.room.publish({ text }),
  type: () => window.app.room.keystroke(),
};
createRoot(document.getElementById("root")).render(<StrictMode><App /></StrictMode>);
