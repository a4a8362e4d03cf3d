//! Bridge tests against a real redis-server.
