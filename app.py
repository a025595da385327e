"""KN026 Feasibility Explorer: the entry point Streamlit runs (`streamlit run app.py`).

It registers the pages, draws the shared sidebar once (ui.sidebar) and runs the selected
page (ui.shell.run); every page then calls `ui.shell.page_start()` for its context.
Starts on the built-in synthetic cohort.
"""

from ui import shell

shell.run()
