"""Layer 7: the feasibility report (Excel, HTML, PowerPoint) from the tables and forecast below it."""
