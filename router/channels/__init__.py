"""Channel adapters (gateways): the shape they share (:mod:`router.channels.base`) and the
gateways themselves (:mod:`router.channels.web`, ...)."""
