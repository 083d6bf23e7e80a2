"""The local stack: every Atalaya service as its own process on loopback, started
in dependency order once each one's grpc.health.v1 says SERVING, with one
service-prefixed log stream and restart of a service that crashes."""
