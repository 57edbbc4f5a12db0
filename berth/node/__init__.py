"""The node's machinery: engine processes and containers, their records, logs and watches, the
port table, the gateway's routes, health probes, file watching, the hardware probe, and what
prepare_files does on the node (model files, engine choice, memory plan). No Temporal workflow code;
the activities (berth.activities) are thin calls into it."""
