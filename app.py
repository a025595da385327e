"""KN026 Feasibility Explorer: the entry point Streamlit runs (`streamlit run app.py`).

It only registers the pages and runs the selected one; every page draws the shared
sidebar through `ui_state.page_start()`. Starts on the built-in synthetic cohort.
"""

import ui_state

page = ui_state.navigation()
ui_state.mark_shell()
page.run()
