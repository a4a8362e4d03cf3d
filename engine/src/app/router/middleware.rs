//! Hooks around connections and messages.

use super::*;

/// Ordered hooks around connections and messages; global ([`Router::middleware`])
/// or per route ([`Router::route_with`]). Every method has a pass-through default.
pub trait Middleware: Send + Sync + 'static {
    /// Before `$connect`, in registration order (global middleware only); an `Err`
    /// refuses the connection.
    fn on_connect(&self, c: &mut Connecting<'_>) -> Result<(), Reject> {
        let _ = c;
        Ok(())
    }

    /// Before the route's handler; an `Err` is handled like the handler's own.
    fn before(&self, ctx: &Ctx, action: &str, body: &Value) -> Result<(), RouteError> {
        let _ = (ctx, action, body);
        Ok(())
    }

    /// Before [`Ctx::join`] (global middleware only): may this connection join `room`?
    fn may_join(&self, ctx: &Ctx, room: &str) -> Result<(), RouteError> {
        let _ = (ctx, room);
        Ok(())
    }
}
