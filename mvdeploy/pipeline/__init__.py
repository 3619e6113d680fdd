"""The export pipeline: config -> capture -> (quantisation search) -> convert -> validate ->
manifest, in one output folder written atomically (exporter.run_export)."""
