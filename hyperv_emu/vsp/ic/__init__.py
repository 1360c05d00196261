"""Integration components: small VMBus services in named-pipe message mode (HYPERV_FACTS 7)."""
