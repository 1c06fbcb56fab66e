//! The sandboxd daemon: control plane, router and sandbox proxy.
