// @edgerelay/client: the browser (and Node) SDK for edgerelay. Everything an app needs is
// exported here; clients/js/README.md shows how to use it and index.d.ts types it.
export { EdgeRelay, endpointUrls, rtcIceServers } from "./edgerelay.js";
export { RelayError, StateError, TimeoutError } from "./errors.js";
export { Room, validRoomName } from "./room.js";
export { SharedRelay } from "./shared.js";
export { PresenceView, presenceDigest, typingText } from "./presence.js";
export { TypingDebounce } from "./typing.js";
export { Outbox, messageId } from "./outbox.js";
export { backoffDelay, refreshDelay, tokenExpiry } from "./schedule.js";
export { FrameError, binary, decodeJson, encodeJson, payloadBytes } from "./codec.js";
export { GroupWriter, webTransportUnavailable } from "./links.js";
export { Call } from "./calls.js";
export { Subscription, topicMatches } from "./events.js";
