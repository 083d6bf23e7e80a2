"""The runtime every Atalaya service shares: settings, logs, telemetry, errors,
the gRPC server runner and client channels. Services never copy any of it."""
