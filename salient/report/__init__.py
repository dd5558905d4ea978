"""PNG overlays, DiDA-View panels, HTML report."""
