"""The MQTT side: one supervised link per broker, and the $CONTROL request channel over it."""
