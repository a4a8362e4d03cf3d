//! The payload format of room channels (see docs/PROTOCOL.md, "Cluster").
