// A chat and a board built only with the React hooks, for the Chromium test (tests/browser.rs):
// the page's fragment says where the relay is, who this is and which token to use. `window.app`
// lets the test type, send, create the board session, patch it, move a cursor, and unmount.
import { createRoot } from "react-dom/client";
import { StrictMode, useState } from "react";
import { EdgeRelay } from "../../src/index.js";
import { useConnectionState, useMessages, usePresence, useRoom, useSession, useTopic, useTyping } from "../../src/react.js";
import { session } from "../../src/sessions.js";

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

// The board: a session's document, members and cursors, and a topic's events.
function Board() {
  const { doc, version, joined, members, cursors, patch, session: board, error } = useSession(relay, "doc:react");
  const { events } = useTopic(relay, "news.*");
  window.app.patch = patch;
  window.app.cursor = (data) => board.cursor(data);
  return (
    <div>
      <p id="board">{joined ? `v${version} ${JSON.stringify(doc)}` : error ? `error: ${error.message}` : "joining"}</p>
      <p id="board-members">{members.map((m) => `${m.user}:${m.present}`).join(" ")}</p>
      <p id="cursors">{Object.entries(cursors).map(([user, c]) => `${user}@${JSON.stringify(c)}`).join(" ")}</p>
      <ol id="news">{events.map((e) => <li key={e.id}>{e.topic} {e.data.text}</li>)}</ol>
    </div>
  );
}

function App() {
  const [shown, setShown] = useState(true);
  const [board, setBoard] = useState(false);
  window.app.unmount = () => setShown(false);
  window.app.showBoard = (on = true) => setBoard(on);
  return (
    <>
      {shown ? <Chat name="chat:react" /> : <p id="gone">unmounted</p>}
      {board ? <Board /> : <p id="no-board">no board</p>}
    </>
  );
}

window.app = {
  relay,
  send: (text) => window.app.room.publish({ text }),
  type: () => window.app.room.keystroke(),
  createBoard: () => relay.connected.then(() => session(relay, "doc:react").create({ cards: [] })).then(() => true),
};
createRoot(document.getElementById("root")).render(<StrictMode><App /></StrictMode>);
