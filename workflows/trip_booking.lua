-- trip_booking: a saga. Flight, hotel and car are booked in parallel (fan-out/fan-in); each
-- booking registers its compensation as soon as it succeeded. If any booking fails, or the trip
-- is cancelled, the bookings made so far are undone in reverse order, and the instance ends
-- failed (or cancelled) with the compensations in its history.
return workflow.define {
  name = "trip_booking",
  run = function(ctx, trip)
    ctx:set_state("booking")
    local function book(kind, cancel_action)
      return function()
        local r = ctx.actions["book_" .. kind] { trip = trip.id, [kind] = trip[kind] }
        ctx:compensate(function() ctx.actions[cancel_action] { trip = trip.id, booking = r.booking } end)
        return r.booking
      end
    end
    local flight, hotel, car = ctx:all {
      book("flight", "cancel_flight"),
      book("hotel", "cancel_hotel"),
      book("car", "cancel_car"),
    }
    ctx:set_state("confirming")
    ctx.actions.send_itinerary { trip = trip.id, flight = flight, hotel = hotel, car = car }
    return { flight = flight, hotel = hotel, car = car }
  end,
}
