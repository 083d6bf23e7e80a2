"""`atalaya`: a command line for the local stack: chat with the gateway, ask one
question, check every service's health, draw a request's trace, send feedback."""
