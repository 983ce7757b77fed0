"""Live camera and video upload for the demo app (notebooks/06_demo.py, served by Voila).

- `CameraWidget`: an anywidget whose JavaScript asks the browser for the camera (getUserMedia), shows
  it, and sends a JPEG of the picture to the kernel every `interval_ms`, but only once the answer
  to the previous frame has come back (a slow kernel is never flooded). The kernel answers with each
  face's box, id and smoothed label, drawn over the picture. Browsers allow the camera only on
  localhost or over HTTPS; the widget says so, and shows the browser's reason when it is refused.
- `LiveApp`: the camera widget on `video.FaceTimeline` (the same detect-track-classify-smooth step
  as `fer video`, on the browser's clock), and an upload button for a video file whose timeline
  (`fer video`'s CSV) is shown as figures.
"""
from __future__ import annotations

import base64
import html
import tempfile
import time
from pathlib import Path

import anywidget
import traitlets

from ..analysis import timeline
from ..analysis.figures import emotion_colors
from . import video
from .faces import ImageError, read_image

FRAME_WIDTH = 480      # the JPEGs sent to the kernel are this wide: enough for faces of ~20 px and more
INTERVAL_MS = 200      # at most 5 frames a second; slower when the kernel takes longer to answer
JPEG_QUALITY = 0.8

_ESM = """
function el(tag, props = {}, parent = null) {
  const node = Object.assign(document.createElement(tag), props);
  if (parent) parent.appendChild(node);
  return node;
}

export default {
  render({ model, el: root }) {
    root.classList.add("fer-camera");
    const bar = el("div", { className: "fer-camera-buttons" }, root);
    const start = el("button", { className: "fer-camera-start", textContent: "Start camera" }, bar);
    const stop = el("button", { className: "fer-camera-stop", textContent: "Stop camera", disabled: true }, bar);
    el("small", { className: "fer-camera-note", textContent:
      " Browsers allow the camera only on localhost or over HTTPS. Frames go to this app's kernel only." }, bar);
    const status = el("div", { className: "fer-camera-status" }, root);
    const stage = el("div", { className: "fer-camera-stage" }, root);
    const view = el("video", { autoplay: true, muted: true, playsInline: true }, stage);
    const overlay = el("canvas", { className: "fer-camera-overlay" }, stage);
    const grab = document.createElement("canvas");
    let stream = null, timer = null, sent = 0;

    function send() {
      if (!stream || !view.videoWidth || model.get("answered") < sent) return;  // wait for the last answer
      const w = model.get("frame_width"), h = Math.round(w * view.videoHeight / view.videoWidth);
      grab.width = w; grab.height = h;
      grab.getContext("2d").drawImage(view, 0, 0, w, h);
      sent += 1;
      model.set("frame", grab.toDataURL("image/jpeg", model.get("jpeg_quality")));
      model.set("frame_seq", sent);
      model.save_changes();
    }

    function draw() {
      const w = view.clientWidth, h = view.clientHeight;
      overlay.width = w; overlay.height = h;
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, w, h);
      if (!stream) return;
      const scale = w / model.get("frame_width");
      ctx.lineWidth = 3; ctx.font = "bold 15px sans-serif";
      for (const f of model.get("faces")) {
        const [x, y, bw, bh] = f.box.map(v => v * scale);
        ctx.strokeStyle = ctx.fillStyle = f.color;
        ctx.strokeRect(x, y, bw, bh);
        const text = `#${f.id} ${f.label} ${Math.round(100 * f.p)}%`;
        const tw = ctx.measureText(text).width;
        ctx.fillRect(x, Math.max(0, y - 20), tw + 8, 20);
        ctx.fillStyle = "black";
        ctx.fillText(text, x + 4, Math.max(15, y - 5));
      }
    }

    start.onclick = async () => {
      status.textContent = "Asking for the camera ...";
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      } catch (err) {
        stream = null;
        status.textContent = `The camera is not available: ${err.name}: ${err.message}` +
          (window.isSecureContext ? "" : " (this page is neither localhost nor HTTPS)");
        return;
      }
      view.srcObject = stream;
      await view.play();
      start.disabled = true; stop.disabled = false;
      status.textContent = "Camera on.";
      model.set("running", true); model.save_changes();
      timer = setInterval(send, model.get("interval_ms"));
    };

    function halt() {
      clearInterval(timer); timer = null;
      if (stream) stream.getTracks().forEach(t => t.stop());
      stream = null; view.srcObject = null;
      start.disabled = false; stop.disabled = true;
      draw();
    }
    stop.onclick = () => {
      halt();
      status.textContent = "Camera off.";
      model.set("running", false); model.save_changes();
    };
    model.on("change:faces", draw);
    model.on("change:message", () => { if (stream) status.textContent = model.get("message"); });
    return halt;
  },
};
"""

_CSS = """
.fer-camera-stage { position: relative; display: inline-block; max-width: 100%; }
.fer-camera-stage video { display: block; width: 480px; max-width: 100%; background: #222; }
.fer-camera-overlay { position: absolute; left: 0; top: 0; pointer-events: none; }
.fer-camera-buttons button { margin-right: 6px; }
.fer-camera-status { margin: 4px 0; min-height: 1.2em; }
"""


class CameraWidget(anywidget.AnyWidget):
    """The browser's camera, frames to the kernel (`frame`: a JPEG data URL), faces back (`faces`)."""
    _esm = _ESM
    _css = _CSS
    frame = traitlets.Unicode("").tag(sync=True)
    frame_seq = traitlets.Int(0).tag(sync=True)
    answered = traitlets.Int(0).tag(sync=True)    # the frame_seq of the last frame answered
    faces = traitlets.List([]).tag(sync=True)     # [{id, box [x, y, w, h] in frame pixels, label, p, color}]
    message = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    frame_width = traitlets.Int(FRAME_WIDTH).tag(sync=True)
    interval_ms = traitlets.Int(INTERVAL_MS).tag(sync=True)
    jpeg_quality = traitlets.Float(JPEG_QUALITY).tag(sync=True)


def decode_frame(data_url: str):
    """A JPEG data URL from the browser -> an RGB PIL image (ImageError when it is not one)."""
    head, _, payload = data_url.partition(",")
    if not head.startswith("data:image/") or not payload:
        raise ImageError("the camera frame is not an image data URL")
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:
        raise ImageError("the camera frame is not valid base64") from None
    return read_image(data, "camera frame")


class LiveApp:
    """The camera and the video upload, for one predictor (the demo's first model)."""

    def __init__(self, predictor, max_upload_mb: int = 64):
        import ipywidgets as w


        self.predictor = predictor
        self.colors = emotion_colors(list(predictor.classes)) if predictor else {}
        self.camera = CameraWidget()
        self.timeline = None
        self.frames = 0
        self.camera.observe(self._on_frame, names="frame")
        self.camera.observe(self._on_running, names="running")
        self.upload = w.FileUpload(accept="video/*,.mp4,.mov,.avi,.webm,.mkv", multiple=False,
                                   description="Upload a video", button_style="primary")
        self.upload.observe(self._on_upload, names="value")
        self.status = w.HTML()
        self.output = w.Output()
        help_text = w.HTML(f"<small>mp4, mov, avi, webm or mkv, up to {max_upload_mb} MB. Each frame's faces "
                           "are found, followed with an id and classified; the timeline shows each face's "
                           "emotions over time.</small>")
        self.widget = w.VBox([self.camera, w.HTML("<h4>Or a video file</h4>"), self.upload, help_text,
                              self.status, self.output])
        self.widget.add_class("fer-live")
        if predictor is None:
            self.upload.disabled = True
            self.status.value = '<b class="fer-error">No model available: see the note above.</b>'

    # -- camera
    def _on_running(self, change) -> None:
        if change["new"]:  # a fresh start: new ids, no smoothing across the pause
            self.timeline = video.FaceTimeline(self.predictor) if self.predictor else None
            self.frames = 0

    def _on_frame(self, change) -> None:
        seq = self.camera.frame_seq
        try:
            if self.predictor is None:
                self.camera.message = "No model is available, so faces cannot be classified."
                return
            if self.timeline is None:
                self.timeline = video.FaceTimeline(self.predictor)
            started = time.perf_counter()
            found = self.timeline.analyse(decode_frame(change["new"]), time.monotonic())
            self.frames += 1
            self.camera.faces = [dict(id=f.id, box=list(f.prediction.box), label=f.label,
                                      p=float(f.smoothed.max()), color=self.colors.get(f.label, "#fff"))
                                 for f in found]
            said = "; ".join(f"#{f.id} {f.label} {f.smoothed.max():.0%}" for f in found) or "no face found"
            self.camera.message = (f"Frame {self.frames}: {said} "
                                   f"({1000 * (time.perf_counter() - started):.0f} ms in the kernel).")
        except ImageError as err:
            self.camera.message = f"Frame skipped: {err}"
        except Exception as err:  # never let a callback die silently in the browser
            self.camera.message = f"Unexpected error: {type(err).__name__}: {err}"
        finally:
            self.camera.answered = seq

    # -- video upload
    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            self.run_video(files[0]["name"], bytes(files[0]["content"]))

    def run_video(self, name: str, data: bytes) -> None:
        """Process an uploaded video and show each face's timeline and its share of time per emotion."""
        from IPython.display import HTML, display


        self.output.clear_output()
        self.status.value = f"<i>Working on {html.escape(name)} ...</i>"
        try:
            with self.output, tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / ("upload" + (Path(name).suffix.lower() or ".mp4"))
                source.write_bytes(data)
                try:
                    summary = video.process_video(source, self.predictor, None, Path(tmp) / "timeline.csv",
                                                  progress=False)
                except video.VideoError as err:
                    display(HTML(f'<div class="fer-error">&#10060; <b>{html.escape(name)}</b>: '
                                 f'{html.escape(str(err).replace(str(source), name))}</div>'))
                    return
                rows = video.read_timeline(Path(tmp) / "timeline.csv")
                notes = summary.messages + ([summary.broken.replace(str(source), name)] if summary.broken else [])
                display(HTML(f'<p class="fer-video-summary">{html.escape(name)}: {summary.frames} frames, '
                             f'{len(summary.face_ids)} face id(s), {summary.fps:.1f} frames/s.</p>'
                             + "".join(f'<p class="fer-note">&#9888; {html.escape(m)}</p>' for m in notes)))
                for face_id in summary.face_ids:
                    timeline.timeline_figure(rows, self.predictor.classes, face_id).show()
                if summary.face_ids:
                    display(timeline.time_shares(rows, self.predictor.classes).style.format("{:.0%}")
                            .format("{:.1f} s", subset=["seconds"]))
        finally:
            self.status.value = ""
