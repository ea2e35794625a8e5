// The console's only script; every page works without it. Three behaviours, each switched on by a data
// attribute, so the pages carry no inline script (the Content-Security-Policy allows none):
//   <input type="file" data-load-into="ID">  loads the chosen text file into the textarea #ID;
//   <span data-countdown="SECONDS">          counts down to 0 as "M:SS" (a claim's time left);
//   <div data-poll="URL" aria-live="polite"> replaces its content every 2 s with the element of the same
//                                            id in the page at URL, until that element has no data-poll.
"use strict";

function loadFileInto(input) {
  const target = document.getElementById(input.dataset.loadInto);
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file || !target) return;
    file.text().then((text) => { target.value = text; });
  });
}

function minutesAndSeconds(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}

function countDown(element) {
  const end = Date.now() + Number(element.dataset.countdown) * 1000;
  const tick = () => {
    const left = (end - Date.now()) / 1000;
    element.textContent = minutesAndSeconds(left);
    if (left > 0) setTimeout(tick, 1000);
  };
  tick();
}

function poll(region) {
  const again = () => setTimeout(() => poll(region), 2000);
  fetch(region.dataset.poll, { credentials: "same-origin", headers: { Accept: "text/html" } })
    .then((response) => (response.ok ? response.text() : Promise.reject(response.status)))
    .then((html) => {
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(region.id);
      if (!fresh) return;
      region.innerHTML = fresh.innerHTML;
      if (fresh.dataset.poll) again();
      else region.removeAttribute("data-poll");
    })
    .catch(again);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[type=file][data-load-into]").forEach(loadFileInto);
  document.querySelectorAll("[data-countdown]").forEach(countDown);
  document.querySelectorAll("[data-poll]").forEach((region) => setTimeout(() => poll(region), 2000));
});
