"""The controller: failure detection (heartbeats), and later placement, flow rules and failover."""
