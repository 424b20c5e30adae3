"""Voice-command tab: one-shot (microphone or upload) and streaming detection, driving a simulated smart device."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import gradio as gr
import numpy as np

from fmhub import audio
from fmhub.ui.common import friendly_errors, summary_markdown
from fmhub.ui.models import ModelSlot

CHANNELS = ("News", "Jazz", "Rock", "Classical", "Podcasts")
LOG_LINES = 12


@dataclass
class DeviceState:
    """A pretend smart speaker with a lamp: what each command does to it."""

    lights: bool = False
    volume: int = 5
    channel: int = 0
    playing: bool = False
    answer: str = "-"
    last: str = "waiting for a command"
    history: list[str] = field(default_factory=list)

    def apply(self, command: str, time: float | None = None) -> None:
        effects = {
            "on": lambda: setattr(self, "lights", True), "off": lambda: setattr(self, "lights", False),
            "up": lambda: setattr(self, "volume", min(10, self.volume + 1)),
            "down": lambda: setattr(self, "volume", max(0, self.volume - 1)),
            "left": lambda: setattr(self, "channel", (self.channel - 1) % len(CHANNELS)),
            "right": lambda: setattr(self, "channel", (self.channel + 1) % len(CHANNELS)),
            "go": lambda: setattr(self, "playing", True), "stop": lambda: setattr(self, "playing", False),
            "yes": lambda: setattr(self, "answer", "yes (confirmed)"),
            "no": lambda: setattr(self, "answer", "no (cancelled)"),
        }
        if command not in effects:
            return
        effects[command]()
        self.last = command if time is None else f"{command} at {time:.2f} s"
        self.history = [self.last, *self.history][:LOG_LINES]


def render_device(device: DeviceState) -> str:
    # every text element carries its own colour: the theme's stylesheet colours <b>, <span> and <div> text dark
    # (light theme), which on this dark panel was nearly invisible
    text = "color:#f2f4f8"
    lamp = "#ffd54a" if device.lights else "#3a3a3a"
    bars = "".join(f'<span style="display:inline-block;width:9px;height:{6 + 2 * i}px;margin-right:2px;'
                   f'background:{"#4caf50" if i < device.volume else "#555"}"></span>' for i in range(10))
    state = "playing" if device.playing else "stopped"

    def field(name: str, value: str) -> str:
        return f'<b style="{text}">{name}</b> <span style="{text}">{value}</span>'

    return (
        '<div id="vc-device" style="display:flex;gap:24px;align-items:center;padding:12px;border-radius:12px;'
        f'background:#1f2430;{text};font-family:sans-serif">'
        f'<div style="width:56px;height:56px;border-radius:50%;background:{lamp};box-shadow:0 0 '
        f'{"24px #ffd54a" if device.lights else "0 #000"}" title="lamp"></div>'
        f'<div style="{text}">{field("Lights", "on" if device.lights else "off")}<br>'
        f'{field("Volume", f"{device.volume}/10")} <span style="vertical-align:bottom">{bars}</span><br>'
        f'{field("Station", f"{html.escape(CHANNELS[device.channel])} ({state})")}<br>'
        f'{field("Last answer", html.escape(device.answer))}</div>'
        f'<div style="{text}"><b style="{text}">Last command</b><br>'
        f'<span data-testid="vc-last" style="{text}">{html.escape(device.last)}</span></div></div>'
    )


def format_result(result: dict) -> str:
    detections = result.get("detections") or []
    if result.get("command"):
        head = f"### Heard **{result['command']}** ({result['score']:.0%})"
    elif result["label"] == "_silence_":
        head = "### Only silence or background noise"
    elif result["label"] == "_unknown_":
        head = "### Speech, but not one of the commands"
    else:
        head = f"### Maybe **{result['label']}** ({result['score']:.0%}, below the detection threshold)"
    lines = [head, f"{result['duration']:.2f} s of audio, {result['windows']} window(s) of 1 s"]
    if len(detections) > 1 or (detections and result["duration"] > 1.0):
        lines.append("Detections: " + ", ".join(f"`{d['label']}` at {d['time']:.2f} s ({d['score']:.0%})"
                                                 for d in detections))
    return "\n\n".join(lines)


def plot_clip(wave: np.ndarray, detections: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = max(len(wave) / audio.SAMPLE_RATE, 1e-3)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4), sharex=True)
    t = np.arange(len(wave)) / audio.SAMPLE_RATE
    step = max(1, len(wave) // 20000)  # a plot never needs more points than this
    top.plot(t[::step], wave[::step], linewidth=0.6, color="#1f77b4")
    top.set_ylim(-1, 1)
    top.set_ylabel("amplitude")
    for d in detections:
        for ax in (top, bottom):
            ax.axvline(d["time"], color="#d62728", linewidth=1.2)
        top.text(d["time"], 0.85, f" {d['label']}", color="#d62728", fontsize=9)
    mel = audio.log_mel_image(wave)
    bottom.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
    bottom.set_ylabel("mel band")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    plt.close(fig)
    return fig


def _session(state: dict | None) -> dict:
    state = state if isinstance(state, dict) else {}
    state.setdefault("device", DeviceState())
    state.setdefault("detector", None)
    return state


def build_voice_command_tab(slot: ModelSlot) -> None:
    gr.Markdown(
        "Say one of **yes, no, up, down, left, right, on, off, stop, go**: the pretend speaker below reacts "
        "(on/off: lights, up/down: volume, left/right: station, go/stop: play, yes/no: answer). "
        "**One shot** classifies a recording or an uploaded clip (any format, rate and channel count; clips longer "
        f"than 1 s are scanned, up to {audio.MAX_SECONDS:.0f} s). **Streaming** listens continuously and reports each "
        "command with its time."
    )
    summary = gr.Markdown(summary_markdown(slot))
    state = gr.State(None)
    device_panel = gr.HTML(render_device(DeviceState()))
    with gr.Tabs():
        with gr.Tab("One shot"):
            # filepath, not numpy: fmhub decodes every format itself (Gradio's numpy conversion needs ffmpeg)
            clip = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Record or upload a command",
                            elem_id="vc-clip")
            recognise = gr.Button("Recognise", variant="primary", elem_id="vc-recognise")
            verdict = gr.Markdown()
            details = gr.JSON(label="Prediction")
            plot = gr.Plot(label="Waveform and log-mel spectrogram")
        with gr.Tab("Streaming"):
            live = gr.Audio(sources=["microphone"], type="filepath", streaming=True, label="Listen continuously",
                            elem_id="vc-live")
            heard = gr.Markdown("Press record and speak; detections appear here.")
            detections_json = gr.JSON(label="Detections so far")
            reset = gr.Button("Reset stream and device")
            # the same detector, one chunk per call, for API clients (gradio_client cannot send a live stream)
            chunk_in = gr.Audio(type="filepath", visible=False)
            chunk_send = gr.Button(visible=False)

    @friendly_errors(slot=slot)
    def classify(recording, session):
        """API: classify a clip (file or recording). Returns the verdict, the prediction, a plot, the device panel."""
        session = _session(session)
        predictor = slot.get()
        wave = predictor.load(recording)  # a clear message for empty, too short, too long or undecodable input
        # through predict: with micro-batching, concurrent visitors' clips go through the model in one batch
        result = predictor.predict([(audio.SAMPLE_RATE, wave)])[0]
        for d in result["detections"]:
            session["device"].apply(d["label"], d["time"] if result["duration"] > 1.0 else None)
        return (format_result(result), result, plot_clip(wave, result["detections"]),
                render_device(session["device"]), session, summary_markdown(slot))

    @friendly_errors(slot=slot)
    def listen(chunk, session):
        """API: feed one chunk of a stream (an audio file, any rate); returns what was heard so far."""
        session = _session(session)
        predictor = slot.get()
        if session["detector"] is None or session["detector"].predictor is not predictor:
            session["detector"] = predictor.stream()
        detector = session["detector"]
        if chunk is not None:
            samples, rate = audio.read_audio(chunk, max_seconds=30.0)
            for d in detector.push(samples, rate):
                session["device"].apply(d["label"], d["time"])
        found = detector.detections
        lines = [f"Listening: {detector.seconds:.1f} s heard, {len(found)} command(s)."]
        lines += [f"- **{d['label']}** at {d['time']:.2f} s ({d['score']:.0%})" for d in reversed(found[-LOG_LINES:])]
        payload = {"seconds": round(detector.seconds, 3), "detections": found}
        return "\n".join(lines), payload, render_device(session["device"]), session

    def restart(session):
        session = _session(session)
        session["detector"] = None
        return "Press record and speak; detections appear here.", None, session

    def reset_all(_session_state):
        fresh = _session(None)
        return "Press record and speak; detections appear here.", None, render_device(fresh["device"]), fresh

    recognise.click(classify, [clip, state], [verdict, details, plot, device_panel, state, summary],
                    api_name="classify_audio")
    stream_outputs = [heard, detections_json, device_panel, state]
    live.stream(listen, [live, state], stream_outputs, api_name=False, stream_every=0.5, time_limit=600,
                concurrency_limit=4)
    chunk_send.click(listen, [chunk_in, state], stream_outputs, api_name="stream_audio")
    live.start_recording(restart, [state], [heard, detections_json, state], api_name=False)
    reset.click(reset_all, [state], [heard, detections_json, device_panel, state], api_name="reset_stream")
