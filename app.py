"""fmhub demo hub: `python app.py [--port 7860] [--customer-service-model user/name] ...`."""

from fmhub.ui.app import build_app, launch_from_args, parse_args

if __name__ == "__main__":
    launch_from_args(parse_args())
else:  # `gradio app.py` reload mode and Spaces-style hosting look for a module-level `demo`
    demo, _ = build_app()
